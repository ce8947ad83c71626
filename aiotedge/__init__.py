"""aiotedge: pipelined CNN inference across small boards, over MQTT."""

__version__ = "0.1.0"
