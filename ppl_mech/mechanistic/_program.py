"""The model as every mechanize family sees it: its program and the output sites wanted."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ppl_mech._capture import Program, capture_program, check_independent_latents
from ppl_mech._errors import ModelError


def mechanized_program(model: Callable, args: Sequence, kwargs: Mapping,
                       sites: Sequence[str] | None) -> tuple[Program, list[str]]:
    """``(program, wanted sites)``; hidden ``numpyro.prng_key()`` randomness and unknown sites raise."""
    program = capture_program(model, args, kwargs)
    if program.uses_prng_key:
        raise ModelError(
            "the model draws randomness with numpyro.prng_key(), which mechanize cannot see; "
            "make it a numpyro.sample site"
        )
    check_independent_latents(model, args, kwargs, program,
                              "mechanize gives each latent site its own input message, so it needs "
                              "independent latent sites")
    wanted = list(program.outputs) if sites is None else list(sites)
    program.check_outputs(wanted)
    return program, wanted
