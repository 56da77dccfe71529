import sys

from numbanorm.cli import main

sys.exit(main())
