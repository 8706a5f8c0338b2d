"""One callable class per stage, run by Ray Data in actor pools."""
