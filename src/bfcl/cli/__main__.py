from bfcl.cli import main

main()
