import sys

from tomocorioc.cli import main

sys.exit(main())
