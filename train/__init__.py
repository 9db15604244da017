"""The jaxcnn training program: `python -m train.main --model=NAME`."""
