"""Simulated IoT devices and a live dashboard, through a Matrix room.

- ``python -m examples.iot_sensor.sensor``: devices (:mod:`.simulate`) that
  publish readings with ``client.publisher``;
- ``python -m examples.iot_sensor.dashboard``: a web page with a live chart per
  sensor, last values, device online/offline, and the last hour of history,
  fed by ``client.subscribe``. ``static/`` holds the page (vanilla JS and a
  small canvas chart, nothing from the internet).
"""
