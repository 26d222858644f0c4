"""`python -m opens2s.dataset_scripts STAGE|all|status --workdir DIR ...` (the same as `opens2s data`)."""

import sys

from opens2s.dataset_scripts.cli import main


if __name__ == "__main__":
    sys.exit(main())
