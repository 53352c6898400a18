"""stt-agent: on-device speech understanding (SenseVoiceSmall) for avatar controllers."""

__version__ = "0.1.0"
