"""Train, test and predict: ``python train.py {fit,validate,test,predict} --config experiments/....yaml``.

See ``python train.py fit --help`` for every option; ``dfn/cli.py`` for what this adds to LightningCLI.
"""

from dfn.cli import main

if __name__ == "__main__":
    main()
