"""FedEngine example: logistic regression on the UCI heart-disease set, one device per
hospital (Cleveland, Hungary, Switzerland, VA Long Beach), judged by federated evaluation."""
