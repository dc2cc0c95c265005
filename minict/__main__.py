from minict.cli.main import main

main()
