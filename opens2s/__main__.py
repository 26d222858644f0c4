"""`python -m opens2s ...` runs the `opens2s` command line (see `opens2s.cli`)."""

from .cli import main


__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
