"""`python -m opens2s ...` runs the `opens2s` command line (see `opens2s.cli`)."""

from opens2s.cli import main


__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
