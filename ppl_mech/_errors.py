"""Errors that name what went wrong: the site, the primitive or the argument."""


class PPLMechError(Exception):
    """Base class for ppl_mech errors."""


class ModelError(PPLMechError, ValueError):
    """The model cannot be captured as given; the message names the site."""


class UnsupportedPrimitiveError(PPLMechError, NotImplementedError):
    """The mechanistic interpreter has no rule for a primitive; the message names it."""


class UnsupportedDistributionError(PPLMechError, NotImplementedError):
    """An estimator cannot use a site's distribution; the message names the site."""
