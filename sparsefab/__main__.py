import sys

from sparsefab.cli import main

sys.exit(main())
