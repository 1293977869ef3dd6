"""Runnable examples of mxsync, as its users meet it.

- :mod:`examples.whiteboard`: a collaborative whiteboard in the browser, kept in
  a room's SyncedDoc (``python -m examples.whiteboard``).
- :mod:`examples.iot_sensor`: simulated devices publishing readings
  (``python -m examples.iot_sensor.sensor``) and a live dashboard
  (``python -m examples.iot_sensor.dashboard``).

``mxsync demo`` starts a homeserver and all of them at once.
"""
