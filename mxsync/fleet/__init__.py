"""Fleets: many devices behind one process.

- :class:`MqttBridge` (``bridge.py``): devices that speak MQTT, in plain JSON
  topics or Sparkplug B, relayed into a room as mxsync devices (readings,
  births, deaths, commands), each through a Publisher of one Matrix client;
- ``sparkplug.py``: the Sparkplug B host's state machine (births, aliases,
  ``seq``, ``bdSeq``), sans-I/O, on the ``pysparkplug`` payload codec;
- ``appservice.py``: the appservice gateway (``FleetGateway``: many devices,
  each its own Matrix user, from one client) and its registration;
- ``transactions.py``: the HTTP endpoint where the homeserver pushes the
  gateway's events (``TransactionEndpoint``), so its devices take commands.

Needs the ``fleet`` extra (``aiomqtt``, ``pysparkplug``).
"""

from .bridge import BridgeStatistics, MqttBridge

__all__ = ["BridgeStatistics", "MqttBridge"]
