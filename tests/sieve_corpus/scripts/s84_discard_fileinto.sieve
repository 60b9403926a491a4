require "fileinto";
discard;
fileinto "After";
