"""The board's CPU temperature and the Raspberry Pi firmware's throttling flags.

A Pi that runs hot slows its cores down, and one on a weak power supply does too: either makes
its stage the pipeline's bottleneck without any error. Both are read from sysfs, a file read
each time the stats are reported (no `vcgencmd` process every tick):

- the temperature from the kernel's thermal zone of the CPU (`/sys/class/thermal/
  thermal_zone*/`, the zone whose `type` names the CPU or SoC: `cpu-thermal` on a Pi), in
  millidegrees Celsius;
- the throttled flags from `/sys/devices/platform/soc/soc:firmware/get_throttled` (Raspberry Pi
  OS kernels; the same bits as `vcgencmd get_throttled`, written in hex).

Where a file is absent (a VM, a laptop without such a zone, another board) the figure is left
out of the stats, without error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: thermal zone types that measure the CPU (Pi: cpu-thermal; other arm boards: cpu_thermal,
#: cpu0-thermal, soc_thermal; Intel: x86_pkg_temp)
CPU_ZONE_TYPES = ("cpu", "soc", "x86_pkg_temp")
FIRMWARE_THROTTLED = Path("devices/platform/soc/soc:firmware/get_throttled")
#: the firmware's bits (Raspberry Pi documentation, `vcgencmd get_throttled`): the condition
#: now, and the same condition + 16 since boot
THROTTLE_CONDITIONS = {
    0: "under_voltage",
    1: "frequency_capped",
    2: "throttled",
    3: "soft_temperature_limit",
}
SINCE_BOOT_SHIFT = 16


@dataclass(frozen=True)
class ThermalReading:
    """One reading; None where this machine does not say."""

    cpu_temp_c: float | None
    #: the firmware's flags as `vcgencmd get_throttled` prints them
    throttled: int | None

    def conditions(self, since_boot: bool = False) -> dict[str, bool]:
        """Each throttling condition, now or since boot; empty without the firmware's flags."""
        if self.throttled is None:
            return {}
        shift = SINCE_BOOT_SHIFT if since_boot else 0
        return {name: bool(self.throttled >> (bit + shift) & 1)
                for bit, name in THROTTLE_CONDITIONS.items()}

    def stats(self) -> dict[str, object]:
        """Its keys in a node's stats message: only those this machine has."""
        out: dict[str, object] = {}
        if self.cpu_temp_c is not None:
            out["cpu_temp_c"] = self.cpu_temp_c
        if self.throttled is not None:
            out["throttled"] = hex(self.throttled)
            out["throttled_now"] = [name for name, on in self.conditions().items() if on]
            out["throttled_since_boot"] = [
                name for name, on in self.conditions(since_boot=True).items() if on]
        return out


class Thermal:
    """Where this machine says its CPU temperature and throttling, found once."""

    def __init__(self, sysfs: Path = Path("/sys")) -> None:
        self._temperature = cpu_zone(sysfs)
        throttled = sysfs / FIRMWARE_THROTTLED
        self._throttled = throttled if throttled.is_file() else None
        log.debug("CPU temperature from %s, throttling from %s", self._temperature,
                  self._throttled)

    def read(self) -> ThermalReading:
        millidegrees = _read_int(self._temperature, 10)
        return ThermalReading(
            cpu_temp_c=round(millidegrees / 1000, 1) if millidegrees is not None else None,
            throttled=_read_int(self._throttled, 16),
        )


def cpu_zone(sysfs: Path) -> Path | None:
    """The `temp` file of the first thermal zone (by number) that measures the CPU."""
    for zone in sorted((sysfs / "class" / "thermal").glob("thermal_zone*"), key=_zone_number):
        try:
            kind = (zone / "type").read_text().strip()
        except OSError:
            continue
        if kind.startswith(CPU_ZONE_TYPES) and (zone / "temp").is_file():
            return zone / "temp"
    return None


def _zone_number(zone: Path) -> int:
    number = zone.name.removeprefix("thermal_zone")
    return int(number) if number.isdigit() else 1 << 30


def _read_int(path: Path | None, base: int) -> int | None:
    """The number in a sysfs file; None when there is none or it cannot be read now (a zone
    whose sensor is asleep answers EAGAIN)."""
    if path is None:
        return None
    try:
        return int(path.read_text().strip(), base)
    except (OSError, ValueError) as exc:
        log.debug("cannot read %s: %s", path, exc)
        return None
