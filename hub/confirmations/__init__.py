"""Durable hazard confirmations."""

from hub.confirmations.pin import hash_pin, verify_pin
from hub.confirmations.service import ConfirmationService, prompt_for

__all__ = ["ConfirmationService", "hash_pin", "prompt_for", "verify_pin"]
