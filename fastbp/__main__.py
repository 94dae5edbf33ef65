from fastbp.cli import main

raise SystemExit(main())
