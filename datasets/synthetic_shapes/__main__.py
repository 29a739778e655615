"""``python -m datasets.synthetic_shapes --show``: see :mod:`datasets.synthetic_shapes.show`."""

import sys

from datasets.synthetic_shapes.show import main

sys.exit(main())
