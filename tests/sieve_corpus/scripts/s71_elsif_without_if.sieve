require "fileinto";
fileinto "A";
elsif true { keep; }
