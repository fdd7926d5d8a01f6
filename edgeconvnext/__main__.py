from edgeconvnext.cli import main

raise SystemExit(main())
