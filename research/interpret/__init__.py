"""Opening the network: deconvnet, occlusion, class models and saliency."""
