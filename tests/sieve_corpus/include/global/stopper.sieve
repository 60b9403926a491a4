require "fileinto";
fileinto "Stopper";
stop;
