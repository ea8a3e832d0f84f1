"""Developer tasks: ``nox -s tests``, ``nox -s digits``, ``nox -s lint``, ``nox -s typecheck``, ``nox -s docs``.

Every session installs avgkit and the first-party plugins (each its own package,
registered through entry points exactly like a third-party plugin) into its own
virtual environment, so a fresh machine needs nothing but Python and nox. On a
machine without a GPU, ``AVGKIT_TORCH_INDEX=https://download.pytorch.org/whl/cpu``
installs the CPU build of PyTorch instead of the CUDA wheels.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PLUGINS = ["plugins/mamba", "plugins/adaln", "plugins/llamagen", "plugins/transformer", "plugins/loggers",
           "plugins/text"]


def install(session: nox.Session, extras: str = "dev") -> None:
    torch_index = os.environ.get("AVGKIT_TORCH_INDEX")  # e.g. https://download.pytorch.org/whl/cpu
    if torch_index:  # PyTorch from that index first; avgkit's install then keeps it
        session.install("torch", "torchvision", "--index-url", torch_index)
    session.install("-e", f".[{extras}]")
    # plugins depend on avgkit, already installed above
    session.install("--no-deps", *[arg for p in PLUGINS for arg in ("-e", p)])


@nox.session
def tests(session: nox.Session) -> None:
    """The CPU test suite (GPU tests are skipped without CUDA), then the wheels installed and used."""
    install(session)
    # optional extras whose tests run against the real packages: the loggers plugin's
    # (wandb offline) and the text plugin's frozen encoders (tiny T5/CLIP built locally)
    session.install("tensorboard>=2.14", "wandb>=0.16", "transformers>=4.40")
    workers = os.environ.get("AVGKIT_TEST_WORKERS", "2")
    session.run("pytest", "-n", workers, "--durations=15", *session.posargs)
    if not session.posargs:  # the whole suite: then the wheels, installed as users install them
        session.run("python", ".ci/check_wheels.py", session.create_tmp() + "/wheels")


@nox.session
def digits(session: nox.Session) -> None:
    """The main job on built-in data: tokenizer, codes, a small AiM, samples and their accuracy."""
    install(session, extras="all")
    session.run("avgkit", "train", "digits", *session.posargs)


@nox.session(name="text-digits")
def text_digits(session: nox.Session) -> None:
    """Text-to-image on real handwriting: two-digit numbers from their words, scored seen and held out."""
    install(session, extras="all")
    session.run("avgkit", "train", "text-digits", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", "avgkit", "plugins", "tests", "benchmarks")


@nox.session
def typecheck(session: nox.Session) -> None:
    install(session)
    session.install("mypy>=1.10")
    session.run("mypy", "--ignore-missing-imports", "avgkit")


@nox.session
def docs(session: nox.Session) -> None:
    session.install("mkdocs>=1.6")
    session.run("mkdocs", "build", "--strict")
