require ["vacation", "fileinto"];
vacation :days 0 "zero";
fileinto "After";
