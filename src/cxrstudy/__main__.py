import sys

from cxrstudy.cli import main

sys.exit(main())
