"""An RTSP camera on loopback for the camera tests, from Debian's GStreamer packages only.

    /usr/bin/python3 support/rtsp_server.py VIDEO.mp4 PORT [--user USER:PASSWORD] [--freeze-after N]

Run by the system interpreter, which has the GObject bindings (python3-gi,
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-rtsp, gstreamer1.0-plugins-base/good/bad): it serves
rtsp://127.0.0.1:PORT/test, looping the file's H.264 without encoding it again (its access units
are read once, then pushed for ever with rising timestamps, so a client sees one endless
stream), and prints "serving" once it listens. `--freeze-after N`: each client's stream stops
after N frames while its connection stays open, as a camera that hangs. `--check` only tries
the imports: exit 0 when this machine can run it.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PAYLOADER = "rtph264pay name=pay0 pt=96 config-interval=-1"


def access_units(path: str) -> tuple[list[tuple[bytes, bool]], Gst.Caps]:
    """The H.264 access units of an mp4 (byte-stream, one per buffer), and whether each is a key
    frame; and their caps."""
    pipeline = Gst.parse_launch(
        f'filesrc location="{path}" ! qtdemux ! h264parse ! '
        "video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false")
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    units, caps = [], None
    while (sample := sink.emit("pull-sample")) is not None:
        caps = caps or sample.get_caps()
        buffer = sample.get_buffer()
        units.append((buffer.extract_dup(0, buffer.get_size()),
                      not buffer.has_flags(Gst.BufferFlags.DELTA_UNIT)))
    pipeline.set_state(Gst.State.NULL)
    if not units:
        sys.exit(f"no H.264 in {path}")
    return units, caps


class LoopingFactory(GstRtspServer.RTSPMediaFactory):
    """One shared stream for every client, made of the file's access units round and round."""

    def __init__(self, units: list[tuple[bytes, bool]], caps: Gst.Caps, fps: int,
                 freeze_after: int | None = None) -> None:
        super().__init__()
        self.units, self.caps, self.fps = units, caps, fps
        self.freeze_after = freeze_after
        self.set_shared(True)

    def do_create_element(self, _url):
        return Gst.parse_launch(
            f"( appsrc name=src is-live=true format=time do-timestamp=false ! h264parse ! "
            f"{PAYLOADER} )")

    def do_configure(self, media):
        source = media.get_element().get_child_by_name("src")
        source.set_property("caps", self.caps)
        sent = [0]
        duration = Gst.SECOND // self.fps

        def need_data(appsrc, _length):
            if self.freeze_after is not None and sent[0] >= self.freeze_after:
                return  # frozen: nothing more, and the connection stays
            data, key = self.units[sent[0] % len(self.units)]
            buffer = Gst.Buffer.new_wrapped(data)
            buffer.pts = buffer.dts = sent[0] * duration
            buffer.duration = duration
            if not key:
                buffer.set_flags(Gst.BufferFlags.DELTA_UNIT)
            sent[0] += 1
            appsrc.emit("push-buffer", buffer)

        source.connect("need-data", need_data)


def require_login(server, factory, user: str, password: str) -> None:
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "camera-user")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    for permission in (GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS,
                       GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT):
        permissions.add_permission_for_role("camera-user", permission, True)
    factory.set_permissions(permissions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", nargs="?")
    parser.add_argument("port", nargs="?", type=int)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--user", help="USER:PASSWORD a client must log in with (Basic)")
    parser.add_argument("--freeze-after", type=int, help="frames each client gets, then none")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.check:
        return
    Gst.init(None)
    factory = LoopingFactory(*access_units(args.video), args.fps, args.freeze_after)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    if args.user:
        require_login(server, factory, *args.user.split(":", 1))
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    print("serving", flush=True)
    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    loop.run()


if __name__ == "__main__":
    main()
