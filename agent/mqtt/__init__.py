"""Publishing speech events over MQTT (see docs/EVENTS.md for the topics and payloads).

- settings.py   MqttSettings (the `mqtt` config section)
- publisher.py  MqttPublisher: the pipeline's sink; connection, outbox, health, commands
- payloads.py   pipeline events -> topic + JSON payload
- commands.py   commands received on <prefix>/+/cmd, checked by docs/schemas/command.json
- connection.py paho client construction (TLS, credentials, Last Will) and connect diagnostics
- discovery.py  Home Assistant discovery configs
- outbox.py     the bounded outbox: a lane for finals, one for other events, one for answers
- store.py      the durable outbox: the kept messages in an SQLite file, read back at the next start
- health.py     latency window and counters;  topics.py  topic names

Nothing is imported here, so `agent.mqtt.settings` loads without paho.
"""
