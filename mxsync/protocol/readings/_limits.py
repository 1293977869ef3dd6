"""The numbers the reading protocol fixes (docs/PROTOCOL.md, "Sensor readings").

Owns the bounds every other module checks against: the time range, value and
text sizes, and the per-event caps that bound decoding work (invariant 4).
They change only with the protocol; nothing here has behaviour.
"""

from __future__ import annotations

from typing import Final

#: Times are int milliseconds since the Unix epoch, from 1970-01-01 ...
MIN_T_MS: Final = 0
#: ... to 2200-01-01T00:00:00Z.
MAX_T_MS: Final = 7_258_118_400_000
#: Decimals a float may carry: its mantissa is ``round(v * 10**p)``, 0 <= p <= 9.
MAX_PRECISION: Final = 9
#: A str value is at most this many bytes of UTF-8.
MAX_STR_BYTES: Final = 256
#: A unit ("Cel", "%RH", "kg/m3", "°C") is 1..32 bytes of printable UTF-8.
MAX_UNIT_BYTES: Final = 32
MAX_NAME_BYTES: Final = 256
MAX_DESCRIPTION_BYTES: Final = 1024
MAX_REASON_BYTES: Final = 64
#: Readings in one org.mxsync.readings event (the bound on decoding work).
MAX_BATCH_READINGS: Final = 65_536
#: Series in one org.mxsync.readings event.
MAX_SERIES: Final = 2_048
#: Bytes the packed columns of one event may take once decompressed (bomb cap).
MAX_RAW_BYTES: Final = 1 << 20
#: The smallest byte budget a BatchEncoder accepts: one reading of any shape fits.
MIN_BATCH_BYTES: Final = 4_096
