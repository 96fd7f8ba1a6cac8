import sys

from nabla_dist.cli import main

sys.exit(main())
