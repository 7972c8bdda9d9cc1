"""The network: anatomy, neuron, sparse layer, readout, model, and the engines that simulate it."""
