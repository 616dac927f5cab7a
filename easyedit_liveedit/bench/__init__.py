"""The experiment harness: command line, Hydra configuration, comparison engine, archives, EMT probe, offline IKE,
tables, plots and the NaN-guard command. It uses the method, the EasyEdit glue, the toy world and the diagnostics;
none of them uses it."""
