from avmae.cli import main

raise SystemExit(main())
