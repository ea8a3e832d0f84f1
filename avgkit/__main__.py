from avgkit.cli.app import main

main()
