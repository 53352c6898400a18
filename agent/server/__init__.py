"""Network ingest: devices stream audio to /ws/stt/{device_id} and get their events back (server.py);
every stream shares the one recognizer through the decode scheduler's lanes."""
