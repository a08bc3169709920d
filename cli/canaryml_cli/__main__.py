from canaryml_cli.main import main

main()
