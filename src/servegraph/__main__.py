from servegraph.cli import main

raise SystemExit(main())
