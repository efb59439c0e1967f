"""The package logger. Library code logs here; only the CLI prints."""

import logging

logger = logging.getLogger("legocompile")
