from miner.faces.cli import main

main()
