from minict.entry import main

main()
