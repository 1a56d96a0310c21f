from visdiff.cli import main

raise SystemExit(main())
