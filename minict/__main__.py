from minict.cli import main

main()
