"""The bottom floor of the nodes: the MQTT seam (`transport`), its one paho implementation
(`session`) and a private mosquitto (`broker`)."""
