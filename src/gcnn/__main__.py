import sys

from gcnn.cli import main

sys.exit(main())
