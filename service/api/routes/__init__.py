"""The REST and WebSocket routes, one ``APIRouter`` per group (``create_app`` includes them)."""
