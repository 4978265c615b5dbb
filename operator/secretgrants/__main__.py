from secretgrants.cli import main

raise SystemExit(main())
