from snapdiff.cli import main

main()
