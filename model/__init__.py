"""cvae-digits' model: the network, its loss, its prior and its image pre/post-processing (torch only, plus
Pillow for decoding uploads). Training, export and serving all import from its modules."""
