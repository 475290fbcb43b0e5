from broadcast.cli import main

main()
