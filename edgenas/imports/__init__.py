"""Other tools' published files in: Once-for-All's supernets, accuracy predictor and phone latency tables.

Each import reads a foreign file without running code from it (`torch.load(weights_only=True)`,
`yaml.safe_load`), checks that every key and shape is what the format promises, and writes the edgenas
artifact the later stages read (a supernet checkpoint, an accuracy predictor, a device's latency table
and predictor) with its manifest naming the source file and its hash. This part depends on nothing
above the files it writes.
"""
