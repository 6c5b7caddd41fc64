"""The small error hierarchy of mobizo-agent. Every message says what was wrong and what to do."""


class MobizoError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(MobizoError):
    """A config file or override is invalid."""


class BundleError(MobizoError):
    """A model bundle is missing, incomplete, or from another version."""


class ExportError(MobizoError):
    """The exporter cannot turn this checkpoint into a bundle."""


class DataError(MobizoError):
    """Training or evaluation data is unusable."""


class AdapterError(MobizoError):
    """An adapter is corrupt, has the wrong shape, or belongs to another bundle."""


class TrainingError(MobizoError):
    """A training job cannot start or continue."""
